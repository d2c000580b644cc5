"""`tag`: only its help for now; the commands arrive with their issue."""

import typer

app = typer.Typer(add_completion=False, help="Autotag images (WD14 / e621 ONNX), prune implied tags, edit captions, report tag statistics and balance N_name folder repeats.")


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        typer.echo("\nNo tag commands are available in this version yet.")
