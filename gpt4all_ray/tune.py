"""`python -m gpt4all_ray.tune`: the search, as `ray job submit -- python -m gpt4all_ray.tune`
starts it on a cluster (the same as `gpt4all-ray tune`; gpt4all_ray/cli/tune.py)."""

import sys

from gpt4all_ray.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
