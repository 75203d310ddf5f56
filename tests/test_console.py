from rich.console import Console

from pretrainer.console import esc, styled, table


def test_tables_show_user_values_as_written_and_styled_cells_without_tags():
    out = Console(record=True, width=200)
    out.print(table("classes in a[/b] [bold]", ["name", "ok"],
                    [["Ankle boot [b]", styled("yes", "green")], ["bad[/b].jpg", "x"]]))
    text = out.export_text()
    assert "a[/b] [bold]" in text and "Ankle boot [b]" in text and "bad[/b].jpg" in text
    assert "yes" in text and "[green]" not in text
    out.print(f"[bold]run[/bold] {esc('runs/x[/b]')}")
    assert "runs/x[/b]" in out.export_text()
