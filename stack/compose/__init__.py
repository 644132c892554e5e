"""The container deployment's own pieces (docker-compose.yaml): its database bootstrap and the gateway's
re-resolving supervisor."""
