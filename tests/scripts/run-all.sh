echo inside ok; uname -a; cat /etc/debian_version
