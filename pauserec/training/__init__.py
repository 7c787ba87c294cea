"""Training: what each stage trains on, the one loop they share, and its resumable state.

| module     | holds                                                                         |
|------------|-------------------------------------------------------------------------------|
| corpus     | training sequences of every stage (grounding, pauses, recommendation layouts) |
| batches    | which sequences train together in a step, packing, tensors                    |
| trainstate | resumable state in ``OUT.partial`` and the live CSV log                       |
| loop       | the loop: bucketing, packing, labelled-only LM head, autocast, DDP, resume    |
| stages     | each stage's surgery (pause rows, controls) and its corpus                    |
| train      | ``python -m pauserec train``: one stage, checkpoint in and out                |

The stage graph and cell names live in :mod:`pauserec.registry`.
"""
