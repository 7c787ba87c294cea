"""Test-only fault injection: ``python train_killed_at.py STEP TRAIN_ARGS...`` trains like
``python -m pauserec train TRAIN_ARGS...`` and SIGKILLs itself right after optimizer step STEP -- a
real crash, through the trainer's ``on_step`` hook, with no hook in the production loop."""

import os
import signal
import sys

from pauserec.training import train


def main() -> None:
    step, argv = int(sys.argv[1]), sys.argv[2:]

    def kill(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    train.run(train.parse(argv), on_step=kill)


if __name__ == "__main__":
    main()
