"""The deploy's templates (package data in federate/deploy/templates/, each named after the file it makes)."""

import jinja2

# Compiling the templates took a tenth of a second of every run; Jinja keeps their compiled code
# between runs in a folder of the user's own (mode 0700, checked by Jinja; a template whose
# source changed is compiled again).
_environment = jinja2.Environment(loader=jinja2.PackageLoader("federate.deploy", "templates"),
                                  undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                  trim_blocks=True, lstrip_blocks=True,
                                  bytecode_cache=jinja2.FileSystemBytecodeCache())


def render(name: str, **context) -> str:
    """Render a template on the controller (files are assembled before upload)."""
    return _environment.get_template(name).render(**context)
