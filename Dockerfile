FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY domain domain
COPY workflows workflows
COPY activities activities
COPY interfaces interfaces
COPY projections projections
COPY api api
COPY adapters adapters
RUN pip install --no-cache-dir -c constraints.txt .
EXPOSE 8000 2575 11112
CMD ["radflow", "up"]
