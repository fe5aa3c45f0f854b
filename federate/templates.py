"""Access to the repository's templates/ folder (each template is named after the file it makes)."""

from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def render(name: str, **context) -> str:
    """Render a template locally (unit tests, and files assembled before upload)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(name).render(**context)
