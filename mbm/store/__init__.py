"""Persistence: the SQLite catalog (source of truth) and the derived FAISS index.

sqlite-utils is imported here, once, with pandas hidden: sqlite-utils imports pandas whenever it is
installed (only to map ``pandas.Timestamp`` columns, which mbm never writes), and where pandas is
installed (the ``scale`` extra brings it) that costs every process about 0.4 s of start-up. pandas
itself stays importable afterwards for whoever needs it.
"""

import sys

if "sqlite_utils" not in sys.modules and "pandas" not in sys.modules:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` raise ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        del sys.modules["pandas"]
