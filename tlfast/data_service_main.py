r"""tlfast-data-service: start tf.data service servers for tlfast-train.

    tlfast-data-service --port=5050 --workers=2            # all on this host
    tlfast-data-service --role=dispatcher --port=5050      # cluster: one host
    tlfast-data-service --role=worker --dispatcher=host:5050   # each worker host

Workers need the image files at the same paths as the trainer (a shared or
replicated file system).
"""

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", "all", ["all", "dispatcher", "worker"],
                  "What to start here.")
flags.DEFINE_integer("port", 5050, "Dispatcher port (role all/dispatcher), "
                     "or worker port (role worker; 0 picks one).")
flags.DEFINE_integer("workers", 2, "Workers to start (role all).")
flags.DEFINE_string("dispatcher", None, "host:port of the dispatcher (role "
                    "worker).")


def main(argv):
    del argv
    import tensorflow as tf

    from tlfast.data import service

    service_lib = tf.data.experimental.service
    if FLAGS.role == "all":
        dispatcher, workers = service.start_local_service(FLAGS.workers,
                                                          FLAGS.port)
        print(f"tf.data service at {dispatcher.target} with {len(workers)} "
              "worker(s); pass --data_service_address="
              f"{dispatcher.target} to tlfast-train. Ctrl-C stops it.", flush=True)
        dispatcher.join()
    elif FLAGS.role == "dispatcher":
        dispatcher = service_lib.DispatchServer(
            service_lib.DispatcherConfig(port=FLAGS.port))
        print(f"dispatcher at {dispatcher.target}", flush=True)
        dispatcher.join()
    else:
        if not FLAGS.dispatcher:
            raise app.UsageError("--dispatcher=host:port is required for "
                                 "--role=worker.")
        worker = service_lib.WorkerServer(service_lib.WorkerConfig(
            dispatcher_address=FLAGS.dispatcher, port=FLAGS.port))
        print(f"worker serving dispatcher {FLAGS.dispatcher}", flush=True)
        worker.join()


def run():
    app.run(main)


if __name__ == "__main__":
    run()
