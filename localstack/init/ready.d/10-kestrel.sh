#!/bin/bash
# LocalStack ready hook (runs inside the container once every service answers): create the
# deployment bucket `make deploy-localstack` uploads the Lambda zips to, and say which of the
# services Kestrel's stack uses this LocalStack lacks, before a deploy fails on them.
set -uo pipefail
stack="${KESTREL_STACK_NAME:-kestrel}"
bucket="${stack}-artifacts"

if awslocal s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
    echo "kestrel: bucket $bucket already exists"
else
    awslocal s3 mb "s3://$bucket" && echo "kestrel: created bucket $bucket for the Lambda zips"
fi

# Glue (the schema registry the stream functions decode with) and CodeBuild (the retraining
# project) are not in LocalStack Community.
if ! awslocal glue list-registries >/dev/null 2>&1; then
    echo "kestrel: WARNING no Glue in this LocalStack: the stream functions need the schema" \
         "registry (LOCALSTACK_AUTH_TOKEN with a plan that has Glue); the stack still deploys"
fi
if ! awslocal codebuild list-projects >/dev/null 2>&1; then
    echo "kestrel: no CodeBuild in this LocalStack: make deploy-localstack leaves out" \
         "RetrainProject and its schedule (LOCALSTACK_SKIP_TYPES)"
fi
echo "kestrel: LocalStack is ready; run: make deploy-localstack"
