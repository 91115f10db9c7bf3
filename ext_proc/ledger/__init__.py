"""The ledger: request records on disk, and the reports that answer "what did we spend, by team?"."""
