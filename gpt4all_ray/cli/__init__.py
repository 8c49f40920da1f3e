"""The command line: `gpt4all-ray` and its subcommands, and the checks before Ray starts."""
