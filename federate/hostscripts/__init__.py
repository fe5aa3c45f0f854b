"""Small Python scripts that run on managed hosts (with the venv's interpreter), uploaded by operations."""

from pathlib import Path


def source(name: str) -> str:
    return (Path(__file__).parent / name).read_text()
