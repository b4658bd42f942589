"""An ERM module that counts its training steps: settings that cannot apply must fail before the first one."""
from lightning_modules.erm import ERM


class CountingERM(ERM):
    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)
