"""The commands' own orchestration: the demos, `defend`, `mechanism` and the HTML report page.
Each composes the layers below; `sublearn.cli` parses arguments and calls one of these."""
