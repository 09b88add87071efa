# The edgekit serve container for SageMaker (real-time, serverless, asynchronous, batch, multi-model, pipelines).
#
#   docker build -f docker/serve.Dockerfile -t edgekit-serve .    (from the repository root)
#   docker run -p 127.0.0.1:8080:8080 -v $PWD/build/model-x86_64:/opt/ml/model edgekit-serve serve
#
# The model API has no authentication: publish it on loopback as above (a bare -p 8080:8080 publishes it on
# every interface of the host), or behind a proxy that authenticates. See docs/cloud.md (Hardening).
#
# SageMaker starts it as `docker run <image> serve`: the artifact's .tar.gz is the model.tar.gz it extracts
# into /opt/ml/model (manifest.json at the top), and it sends /ping and /invocations to port 8080
# (or $SAGEMAKER_BIND_TO_PORT in an inference pipeline). As a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true)
# it starts empty and SageMaker loads models with POST /models.
FROM python:3.11-slim

LABEL com.amazonaws.sagemaker.capabilities.multi-models=true
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

WORKDIR /opt/edgekit
COPY pyproject.toml README.md ./
COPY edgekit ./edgekit
COPY devices ./devices
COPY compiler ./compiler
COPY components ./components
COPY recipes ./recipes
RUN pip install --no-cache-dir '.[serve]'

ENV EDGEKIT_MODEL_DIR=/opt/ml/model \
    EDGEKIT_SERVE_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["edgekit"]
CMD ["serve"]
