"""The Doom game: the gymnasium env (ViZDoom + Freedoom), the exploration policy, training shards
and eval suites. The engine knows no game: nothing in engine/ imports this package."""
