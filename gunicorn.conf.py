"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py dicomsite.wsgi`.

Rendering is CPU-bound (numpy, codecs release the GIL only in part): one process per core,
a few threads each for I/O-bound requests (uploads, downloads, tag reads). Environment:
GUNICORN_BIND, GUNICORN_WORKERS, GUNICORN_THREADS, GUNICORN_TIMEOUT, GUNICORN_MAX_REQUESTS.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
worker_class = "gthread"
# Long enough for a 2 GB upload over a slow link or a large JPEG 2000 decode; a stuck worker is replaced.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 300))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that fragmentation after large renders cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 2000))  # 0: never
max_requests_jitter = min(200, max_requests // 10)  # each worker recycles after max_requests plus up to a tenth more
# The access log shows the path without the query string: ?search= and ?patient_id= carry patient data.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms req=%({x-request-id}o)s'
# A share link's secret is in its path: logged as /share/-/... (dicomsite/accesslog.py).
logger_class = "dicomsite.accesslog.AccessLogger"
errorlog = "-"
limit_request_line = 8190
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
