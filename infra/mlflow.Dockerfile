# The MLflow tracking server: the same mlflow as the project's clients (pinned by requirements.lock),
# plus the Postgres driver for the backend store and boto3 for the S3 (MinIO) artifact store.
# Build context: the repository root (see docker-compose.yml).
FROM python:3.11-slim

COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir -c /tmp/requirements.lock mlflow boto3 psycopg2-binary==2.9.13 \
    && rm /tmp/requirements.lock

EXPOSE 5000
