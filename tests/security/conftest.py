from tests.integration.conftest import containers_of, docker_client, runner, settings, volumes_of

__all__ = ["containers_of", "docker_client", "runner", "settings", "volumes_of"]
