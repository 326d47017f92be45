"""Two CPU processes (gloo): clustering + update equal one process on the global batch; ranks stay identical."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import tiny_protoseg_config

from modeling_protoseg import ProtoSegForSemanticSegmentation, momentum_update_prototypes, sinkhorn_assign_pixels
from test_prototypes import random_problem

WORLD_SIZE = 2


def _cluster_and_update(embeddings, prototypes, classes, own):
    assignments, plan = sinkhorn_assign_pixels(own, classes, prototypes.shape[0], iterations=3, epsilon=0.05)
    updated = momentum_update_prototypes(prototypes, embeddings, classes, assignments, momentum=0.9)
    return assignments, plan, updated


def _worker(rank: int, init_file: str, output_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)
    ddp_model, finished = None, False
    try:
        # 1. Functions: each rank holds half of the global batch (unequal halves on purpose).
        embeddings, prototypes, classes, own = random_problem(num_pixels=301)
        half = slice(0, 140) if rank == 0 else slice(140, None)
        assignments, plan, updated = _cluster_and_update(embeddings[half], prototypes, classes[half], own[half])

        # 2. A DDP training step: different data per rank, prototypes must stay identical across ranks.
        torch.manual_seed(0)
        model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)
        generator = torch.Generator().manual_seed(100 + rank)
        pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 3, (2, 32, 32), generator=generator)
        if rank == 1:
            labels[:] = 255  # an all-ignored batch on one rank must not deadlock the collectives
        before = model.prototypes.clone()
        for _ in range(2):
            ddp_model(pixel_values, labels=labels).loss.backward()
        torch.save(
            {
                "assignments": assignments,
                "plan": plan,
                "updated": updated,
                "model_prototypes_before": before,
                "model_prototypes": model.prototypes.clone(),
            },
            os.path.join(output_dir, f"rank{rank}.pt"),
        )
        finished = True
    finally:
        # Release DDP's Reducer (and the gloo work it holds) and synchronise BEFORE the process group goes:
        # destroying the group first can deadlock at exit under load (ProcessGroupGloo's destructor joins its
        # worker thread while the Reducer's teardown holds the GIL). DESIGN.md, issue 9.
        ddp_model = None
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    embeddings, prototypes, classes, own = random_problem(num_pixels=301)
    assignments, plan, updated = _cluster_and_update(embeddings, prototypes, classes, own)
    assert torch.equal(torch.cat([ranks[0]["assignments"], ranks[1]["assignments"]]), assignments)
    torch.testing.assert_close(torch.cat([ranks[0]["plan"], ranks[1]["plan"]]), plan, rtol=1e-5, atol=1e-7)
    for rank in ranks:
        torch.testing.assert_close(rank["updated"], updated, rtol=1e-5, atol=1e-6)

    # Without the all-reduce, rank 0 alone would have computed something else.
    local = _cluster_and_update(embeddings[:140], prototypes, classes[:140], own[:140])[2]
    assert not torch.allclose(local, updated, atol=1e-4)

    assert torch.equal(ranks[0]["model_prototypes"], ranks[1]["model_prototypes"])
    assert not torch.equal(ranks[0]["model_prototypes"], ranks[0]["model_prototypes_before"])
