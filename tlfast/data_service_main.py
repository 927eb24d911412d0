r"""tlfast-data-service: start tf.data service servers for tlfast-train.

    tlfast-data-service --port=5050 --workers=2            # all on this host
    tlfast-data-service --role=dispatcher --port=5050      # cluster: one host
    tlfast-data-service --role=worker --dispatcher=host:5050   # each worker host

Workers need the image files at the same paths as the trainer (a shared or
replicated file system). The flags are `tlfast.config.ServiceConfig`'s
fields.
"""

from tlfast import cli
from tlfast import config

cli.define_flags(config.ServiceConfig)


def serve(service_config):
    """Starts the servers of `service_config.role` and waits on them."""
    import tensorflow as tf

    from tlfast.data import service

    service_lib = tf.data.experimental.service
    c = service_config
    if c.role == "all":
        dispatcher, workers = service.start_local_service(c.workers, c.port)
        print(f"tf.data service at {dispatcher.target} with {len(workers)} "
              "worker(s); pass --data_service_address="
              f"{dispatcher.target} to tlfast-train. Ctrl-C stops it.", flush=True)
        dispatcher.join()
    elif c.role == "dispatcher":
        dispatcher = service_lib.DispatchServer(
            service_lib.DispatcherConfig(port=c.port))
        print(f"dispatcher at {dispatcher.target}", flush=True)
        dispatcher.join()
    else:
        worker = service_lib.WorkerServer(service_lib.WorkerConfig(
            dispatcher_address=c.dispatcher, port=c.port))
        print(f"worker serving dispatcher {c.dispatcher}", flush=True)
        worker.join()
    return 0


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-data-service", config.ServiceConfig, serve)


if __name__ == "__main__":
    run()
