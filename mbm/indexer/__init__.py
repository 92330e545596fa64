"""The pipeline that turns a corpus into catalog rows and vectors."""
