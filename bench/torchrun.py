"""`python -m bench.torchrun ARGS`: torchrun (torch.distributed.run, the same arguments) for `invoke bench --nproc N`,
which passes on the exit code of the first failed rank and none of the launcher's own traceback. A bad input on
rank 0 thus stays what it is on one process: its `error: ...` line and exit code 2. A rank that crashed has
printed its own traceback; the launcher adds one line naming it."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the agent's failure report repeats what the ranks printed, as a traceback of the launcher itself
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode != 2:  # 2: a UserError, already reported by rank 0 in one line
            print(f"torchrun: rank {rank} failed with exit code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
