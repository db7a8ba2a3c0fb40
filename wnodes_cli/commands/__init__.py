"""One module per subcommand: a typed function over the core, plus its output."""
