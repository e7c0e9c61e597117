"""Check the network a job will train over: all-reduce bus bandwidth and latency between all of
its processes, with the backend training uses (NCCL on GPUs, gloo on CPUs).

Launch it exactly as the training job (same machines, same torchrun/Slurm settings):

    torchrun --nproc-per-node 8 bench/allreduce.py                      # one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 --rdzv-id check bench/allreduce.py  # on each machine

Bus bandwidth is NCCL-tests' figure: algorithm bandwidth (bytes / time) × 2(n−1)/n, which for a
ring all-reduce is what each link carries; compare it with the link's rated speed (NVLink, or the
InfiniBand/Ethernet NIC). A figure far below it usually means the wrong interface was picked (set
NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME) or InfiniBand is not used (NCCL_DEBUG=INFO says which).
DDP moves the model's gradients once per step (2 × 4 bytes × parameters of bus traffic in fp32),
FSDP about 1.5 times that, so step time ≥ that traffic / bus bandwidth unless it overlaps.

    python bench/allreduce.py --sizes-mb 1 16 256 --iters 20
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.001, 1, 16, 128], help="message sizes in MB (fp32)")
    parser.add_argument("--iters", type=int, default=10, help="timed all-reduces per size (after 2 untimed)")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error("launch it with torchrun (see the description), so that it has processes to talk to")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if rank == 0:
        print(f"{world} processes, backend {dist.get_backend()}, {os.environ.get('LOCAL_WORLD_SIZE', '?')} per machine")
        print(f"{'size':>10} {'time/op':>10} {'algbw':>12} {'busbw':>12}")
    for size_mb in args.sizes_mb:
        tensor = torch.ones(max(1, int(size_mb * 2**20 / 4)), device=device)
        for _ in range(2):
            dist.all_reduce(tensor)
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(tensor)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / args.iters
        algorithm = tensor.numel() * 4 / seconds
        if rank == 0:
            print(f"{tensor.numel() * 4 / 2**20:>8.3f}MB {seconds * 1e3:>8.2f}ms {algorithm / 1e9:>8.2f} GB/s {algorithm * 2 * (world - 1) / world / 1e9:>8.2f} GB/s")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
