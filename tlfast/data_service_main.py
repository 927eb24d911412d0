r"""tlfast-data-service: start tf.data service servers for tlfast-train.

    tlfast-data-service --port=5050 --workers=2            # all on this host
    tlfast-data-service --role=dispatcher --port=5050      # cluster: one host
    tlfast-data-service --role=worker --dispatcher=host1:5050 \
        --worker_address=host2 --worker_port=5051          # each worker host

Workers need the image files at the same paths as the trainer (a shared or
replicated file system). The servers listen on every interface without
authentication: trusted networks only. The flags are
`tlfast.config.ServiceConfig`'s fields.
"""

from tlfast import cli
from tlfast import config

cli.define_flags(config.ServiceConfig)


def serve(service_config):
    """Starts the servers of `service_config.role` and waits on them."""
    from tlfast.data import service

    servers, line = service.start_servers(service_config)
    print(line, flush=True)
    servers[0].join()
    return 0


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-data-service", config.ServiceConfig, serve)


if __name__ == "__main__":
    run()
