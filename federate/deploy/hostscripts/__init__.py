"""Small Python scripts that run on managed hosts (with the venv's interpreter), shipped as package data."""

from importlib.resources import files


def source(name: str) -> str:
    return files(__package__).joinpath(name).read_text()
