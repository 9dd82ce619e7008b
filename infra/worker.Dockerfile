# A Prefect worker for the rdm-gpu process pool: the project installed from requirements.lock, run
# from /srv/rdm (RDM_PROJECT_DIR, which the pull step of infra/prefect.yaml changes into).
# Build context: the repository root (see docker-compose.yml); infra/worker.Dockerfile.dockerignore
# keeps .venv, data and models out of it.
#
# The base image brings Python 3.11 (the project's `requires-python`) on a CUDA 12 runtime. pip then
# replaces its torch with the locked torch==2.14.1, whose wheels carry their own CUDA libraries
# (nvidia-*-cu13 in requirements.lock): the host's NVIDIA driver must support that CUDA release.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# git: DVC (scm) and the prefect git_clone pull step need it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/rdm
COPY . /srv/rdm
RUN pip install --no-cache-dir -c requirements.lock .

ENV PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    RDM_PROJECT_DIR=/srv/rdm

CMD ["prefect", "worker", "start", "--pool", "rdm-gpu", "--type", "process", \
     "--base-job-template", "/srv/rdm/infra/work-pool.json", "--with-healthcheck"]
