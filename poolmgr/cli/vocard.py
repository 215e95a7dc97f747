"""Commands about VO cards: vocards check, vocards import-egi."""

from pathlib import Path
from typing import Annotated

import typer

from poolmgr.cli.state import state
from poolmgr.errors import VoCardError

app = typer.Typer(help="Validate VO cards and create them from EGI VO ID cards.")


@app.command("check")
def check_command(
    path: Annotated[
        Path | None,
        typer.Argument(help="VO card file or directory (default: configured)."),
    ] = None,
) -> None:
    """Validate VO cards; print every problem as file:line: key: message."""
    from poolmgr.vocards import check_cards

    target = state.vocards(path)
    problems = check_cards(target)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(VoCardError.exit_code)
    typer.echo(f"{target}: VO cards are valid.")


@app.command("import-egi")
def import_egi_command(
    xml_file: Annotated[Path, typer.Argument(help="EGI VO ID card XML file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory.")],
    sizes: Annotated[
        str,
        typer.Option(help="'none' leaves sizes at 0; 'members' proposes them."),
    ] = "none",
    overwrite: Annotated[
        bool, typer.Option(help="Replace VO cards that already exist.")
    ] = False,
) -> None:
    """Write one VO card per VO found in EGI VO ID card XML."""
    from poolmgr.egi import import_egi

    report = import_egi(xml_file, output, sizes=sizes, overwrite=overwrite)
    typer.echo(str(report))
