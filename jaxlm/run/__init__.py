"""What a run writes into its workdir and reads back (docs/architecture.md, docs/interfaces.md)."""
