"""The ledger rules: pure, standard library only, no IO, no clock (time is passed in)."""
