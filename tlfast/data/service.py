"""tf.data service: run the pixel pipeline (read, decode, resize) on worker processes.

A dispatcher hands out the files; each worker decodes its share; the trainer
receives finished uint8 batches. `distributed_epoch` processing gives every
element to exactly one worker, so an epoch (and a feature extraction) sees
each example exactly once; the order varies, which is why extraction
matches outputs to ids by each element's "index".

Local use:   tlfast-data-service --port=5050 --workers=2
Then train:  tlfast-train ... --data_service_address=grpc://localhost:5050

The servers listen on every network interface and authenticate no one: any
peer that reaches the ports can read the images and run the dataset graphs
it sends. Run them on a trusted network only, behind a firewall.
"""

import dataclasses

import tensorflow as tf

from tlfast.data import pipeline


def distribute(ds, address, job_name=None):
    """Sends `ds`'s processing to the tf.data service at `address`.

    Args:
      ds: A dataset whose source is splittable (e.g. `from_tensor_slices`).
      address: "grpc://host:port" of the dispatcher (or "host:port").
      job_name: Optional shared job name (consumers of one job share its
        elements).

    Returns:
      The distributed dataset: same element spec, every element once.
    """
    if "://" not in address:
        address = "grpc://" + address
    return ds.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=address, job_name=job_name))


def finish_served(ds, num_examples, config, *, training):
    """`pipeline.finish` for elements that came through the service.

    Served elements arrive in any order: they are cached in RAM or not at
    all (a disk cache keyed by content would freeze one arbitrary order).

    Args:
      ds: Unbatched decoded elements, already `distribute`d.
      num_examples: How many there are.
      config: A `pipeline.PipelineConfig`.
      training: As for `pipeline.finish`.
    """
    config = dataclasses.replace(
        config, cache="memory" if pipeline.choose_cache(
            num_examples, config) == "memory" else "none")
    return pipeline.finish(ds, num_examples, config, training=training)


def start_local_service(num_workers=2, port=0):
    """Starts a dispatcher and `num_workers` workers in this process.

    Args:
      num_workers: Worker servers to start.
      port: Dispatcher port (0 picks a free one).

    Returns:
      (dispatcher, workers); `dispatcher.target` is the address to pass.
    """
    dispatcher = tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=port))
    target = dispatcher.target.split("://")[1]
    workers = [tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=target))
        for _ in range(num_workers)]
    return dispatcher, workers


EXPOSURE = ("listening on every interface, without authentication: anyone "
            "who reaches port {ports} can read the images; use a trusted "
            "network only, behind a firewall")


def start_servers(config):
    """Starts the servers `config` (a `tlfast.config.ServiceConfig`) asks for.

    Returns:
      (servers, one line saying what runs where, and who can reach it).
    """
    service = tf.data.experimental.service
    if config.role == "all":
        dispatcher, workers = start_local_service(config.workers, config.port)
        port = dispatcher.target.rsplit(":", 1)[1]
        return [dispatcher, *workers], (
            f"tf.data service at {dispatcher.target} with {len(workers)} "
            f"worker(s), {EXPOSURE.format(ports=f'{port} and the workers')}; "
            f"pass --data_service_address={dispatcher.target} to tlfast-train")
    if config.role == "dispatcher":
        dispatcher = service.DispatchServer(
            service.DispatcherConfig(port=config.port))
        port = dispatcher.target.rsplit(":", 1)[1]
        return [dispatcher], (
            f"dispatcher at {dispatcher.target}, {EXPOSURE.format(ports=port)}")
    host = config.worker_address or "localhost"
    worker = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=config.dispatcher.split("://")[-1],
        worker_address=f"{host}:%port%", port=config.worker_port))
    return [worker], (
        f"worker for dispatcher {config.dispatcher}, reached by trainers at "
        f"{host}:{config.worker_port or '(a free port)'}, "
        f"{EXPOSURE.format(ports=config.worker_port or 'its')}")
