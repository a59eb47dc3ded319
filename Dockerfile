# The image of every pod of deploy/kuberay/rayjob.yaml (head, GPU workers, job submitter): Ray's own
# GPU image (CUDA, Python 3.11, Ray 2.60; keep its tag equal to the `ray` you submit from) plus this
# package with its MLflow and W&B extras.
#
#   docker build -t REGISTRY/raydistill:0.1.0 . && docker push REGISTRY/raydistill:0.1.0
#
# KubeRay replaces the command with `ray start`; the CMD below is what `docker run IMAGE` does on one
# machine: the default experiment on a local Ray instance.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/raydistill
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raydistill ./raydistill
RUN pip install --no-cache-dir ".[mlflow,wandb]"

CMD ["raydistill", "run", "--config", "default"]
