"""A model that breaks the input contract: ERM's network without its normalisation layer (it expects inputs
normalised outside it), for the benchmark's refusal test."""
from lightning_modules.erm import ERM


class Unnormalised(ERM):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.model = self.model[1]
