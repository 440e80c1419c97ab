"""Write the model zoo's table (`sslhub.hub.zoo.MODELS`) into README.md, between `<!-- zoo:start -->` and
`<!-- zoo:end -->`. Run it after changing the catalogue; the test suite fails while the two differ.

    python scripts/write_zoo_table.py           # rewrite the table
    python scripts/write_zoo_table.py --check   # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslhub.hub.zoo import update_readme

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    up_to_date = update_readme(README, check=args.check)
    print(f"{README}: {'up to date' if up_to_date else 'out of date' if args.check else 'table rewritten'}")
    return 0 if up_to_date or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
