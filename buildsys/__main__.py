from __future__ import annotations

from buildsys.cli import main

if __name__ == "__main__":
    main()
