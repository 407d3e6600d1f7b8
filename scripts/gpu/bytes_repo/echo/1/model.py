import os, sys, traceback
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
import numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        pb_utils.Logger.log_info(f"numpy {np.__version__} {np.__file__} path={sys.path}")
        for stmt in ("import torch", "import transformers.models.bert.modeling_bert",
                     "from transformers import AutoModel", "import cupy"):
            try:
                exec(stmt)
                pb_utils.Logger.log_info(f"OK {stmt}")
            except BaseException:
                pb_utils.Logger.log_info(f"FAIL {stmt}: " + traceback.format_exc()[-1500:].replace("\n", " | "))
    def execute(self, requests):
        out = []
        for r in requests:
            q = pb_utils.get_input_tensor_by_name(r, "q").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("n", np.array([[len(q[0,0])]], dtype=np.int32))]))
        return out
