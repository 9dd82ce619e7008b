"""The registered model's MLflow entry point ("models from code": MLflow runs this file, nothing of ours
is pickled). It wraps the model folder logged as the `model` artifact; `rdm` comes with it as code.

Input: contexts (B, 1+k, D) float32, L2-normalised CLIP vectors with the query first.
Output: images (B, H, W, 3) uint8. Params: steps, guidance_scale, seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class RdmPyfuncModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from rdm.models.pipeline import load_pipeline

        self.model = load_pipeline(Path(context.artifacts["model"]), device="auto")

    def predict(self, context, model_input, params=None):
        # no type hints: MLflow would read them as a schema; the logged signature is the schema
        import torch

        params = params or {}
        contexts = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.model.generate(
            contexts,
            steps=int(params.get("steps", 50)),
            guidance_scale=float(params.get("guidance_scale", 5.0)),
            seed=int(params.get("seed", 0)),
        )


mlflow.models.set_model(RdmPyfuncModel())
