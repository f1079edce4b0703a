"""Read models built from the event store; each can be dropped and rebuilt from zero."""
