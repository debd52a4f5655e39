"""Make the sibling helper module importable: the repository runs pytest in importlib mode,
which does not put test folders on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
