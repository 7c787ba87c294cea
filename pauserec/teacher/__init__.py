"""Teachers of the explicit chain-of-thought baseline: who writes a rationale, and the client that
asks.

| module     | holds                                                                          |
|------------|--------------------------------------------------------------------------------|
| llm        | an OpenAI-compatible client: retries, deadlines, an append-only response cache |
| rationales | template, leaky template, local-model and OpenAI                               |
|            | rationales; ``python -m pauserec rationales``                                  |
"""
