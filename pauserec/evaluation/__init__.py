"""Evaluation: ranking metrics, paired statistics, the leak-free evaluation command, classical
baselines.

| module    | holds                                                                    |
|-----------|--------------------------------------------------------------------------|
| metrics   | Recall/NDCG@K as tiny pure functions over ranks; health of a recommender |
| stats     | bootstrap CIs, paired comparisons, Holm                                  |
| evaluate  | ``python -m pauserec evaluate``: beam search                             |
|           | on held-out users, per-user rows, latency                                |
| baselines | popularity, markov and SASRec on the same split, users and metrics       |
"""
