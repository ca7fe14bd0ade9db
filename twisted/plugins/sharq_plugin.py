# The twistd plugin: `twistd sharq -c FILE`.  Lazy, so that `twistd --help`
# stays fast and a broken import here cannot break other plugins.
from twisted.application.service import ServiceMaker

sharq = ServiceMaker(
    "sharqd", "sharqd.tap", "Rate-limited job queue server (SharQ Server API)", "sharq"
)
