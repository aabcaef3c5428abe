"""Train the default digits model with the Python API instead of the `diffscore train` command.

    python examples/train_digits.py                 # the "digits" preset
    python examples/train_digits.py steps=2000 lr=5e-4

Arguments are config overrides (``key=value``, see ``diffscore.training.TrainConfig``).
"""

import sys

import torch

from diffscore.data import save_image_grid
from diffscore.evaluation import evaluate_bpd, gaussian_baseline_bpd, generate_samples, summarize
from diffscore.training import Trainer, apply_overrides, get_preset

torch.set_num_threads(1)
config = apply_overrides(get_preset("digits"), sys.argv[1:])
trainer = Trainer(config, "runs/digits_example")
trainer.fit()  # validates every eval_every steps and keeps the best EMA weights
model = trainer.best_model()
model.save_pretrained("runs/digits_example/model", metadata=trainer.metadata())

test = trainer.test_data.images
bpd = evaluate_bpd(model, test, trainer.num_bins, config.data_range, rtol=1e-4, atol=1e-4, progress=True)[
    "bpd"
]
baseline = gaussian_baseline_bpd(trainer.train_data.images, test, trainer.num_bins, config.data_range)
print("test bits/dim      ", summarize(bpd))
print("Gaussian baseline  ", summarize(baseline))

_, samples = generate_samples(
    model, 64, trainer.image_shape, trainer.num_bins, config.data_range, rtol=1e-4, atol=1e-4
)
save_image_grid(samples, "runs/digits_example/samples.png", nrow=8, num_bins=trainer.num_bins)
