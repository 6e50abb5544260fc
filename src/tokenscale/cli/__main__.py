"""`python -m tokenscale.cli`: the same as the `tokenscale` command."""

from tokenscale.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
