"""Run by tests/test_distributed.py in two gloo processes (`accelerate launch --multi_gpu --num_processes 2`).

Checks, at every step of a short MoCo v2 run on the shipped sample: the data is sharded without overlap;
the keys of both processes enter the queue, in rank order; the queue and the key encoder are identical
on both processes; shuffle-BN hands each process other processes' samples and returns its own keys.
"""

import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
from torch.utils.data import DataLoader

from sslhub import MoCoConfig, MoCoForPreTraining
from sslhub.data import TwoViewDataset, collate, load_image_dataset, two_view_transform
from sslhub.models.distributed import rank, shuffle_batch, unshuffle_batch, world_size


def main() -> None:
    accelerator = Accelerator(
        cpu=True,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=0),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    assert world_size() == 2, world_size()
    torch.manual_seed(0)

    # shuffle-BN: a process receives samples of the other process; unshuffling returns its own.
    local = torch.arange(8.0).view(4, 2) + 100 * rank()
    shuffled, index = shuffle_batch(local)
    assert (shuffled >= 100).any() and (shuffled < 100).any(), shuffled
    assert torch.equal(unshuffle_batch(shuffled, index), local)

    batch_size = 8
    config = MoCoConfig.v2(
        backbone="test_resnet",
        image_size=32,
        queue_size=64,
        projection_dim=16,
        batch_size=batch_size * 2,
        crop_pct=1.0,
    )
    model = MoCoForPreTraining(config)
    dataset = load_image_dataset("sample", "test[:64]")
    views = TwoViewDataset(dataset, two_view_transform("v2", 32, config.image_mean, config.image_std))
    loader = DataLoader(views, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    inner = accelerator.unwrap_model(model)

    seen = []
    for step, batch in enumerate(loader):
        pointer = inner.queue_ptr.item()
        output = model(
            query_pixel_values=batch["query_pixel_values"], key_pixel_values=batch["key_pixel_values"]
        )
        accelerator.backward(output.loss)
        optimizer.step()
        optimizer.zero_grad()

        keys = accelerator.gather(output.key_embeddings.contiguous())  # (2 * batch, D), rank order
        written = inner.queue[pointer : pointer + keys.shape[0]]
        assert torch.allclose(written, keys), f"step {step}: the queue does not hold both processes' keys"
        queues = accelerator.gather(inner.queue[None])
        assert torch.equal(queues[0], queues[1]), f"step {step}: the queues differ across processes"
        key_weights = accelerator.gather(
            torch.cat([p.flatten() for p in inner.key_encoder.parameters()])[None]
        )
        assert torch.equal(key_weights[0], key_weights[1]), f"step {step}: the key encoders differ"
        seen.append(accelerator.gather(batch["index"]))

    indices = torch.cat(seen)
    assert indices.numel() == 64 and indices.unique().numel() == 64, "the shards overlap or miss samples"
    accelerator.print(f"distributed check passed: {len(seen)} steps, queues identical")
    accelerator.end_training()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
