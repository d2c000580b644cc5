"""`train`: only its help for now; the commands arrive with their issue."""

import typer

app = typer.Typer(add_completion=False, help="Train LoRA / LyCORIS networks and embeddings for SD1.x, SD2.x and SDXL from a TOML config.")


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        typer.echo("\nNo train commands are available in this version yet.")
