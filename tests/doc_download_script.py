#!/usr/bin/env python3
"""The download script of the DESaccess documentation (shared/seeds/desaccess-examples.rst),
kept as written there for the benchmark, except that the job's files URL and the output
folder come from the command line (the original builds the URL from the API's base URL).

usage: doc_download_script.py JOB_URL OUTDIR
"""

import requests
import os
import sys


def download_job_files(url, outdir):
      os.makedirs(outdir, exist_ok=True)
      r = requests.get('{}/json'.format(url))
      for item in r.json():
         if item['type'] == 'directory':
            suburl = '{}/{}'.format(url, item['name'])
            subdir = '{}/{}'.format(outdir, item['name'])
            download_job_files(suburl, subdir)
         elif item['type'] == 'file':
            data = requests.get('{}/{}'.format(url, item['name']))
            with open('{}/{}'.format(outdir, item['name']), "wb") as file:
                  file.write(data.content)

      return r.json()


job_url = sys.argv[1].rstrip('/')
download_dir = sys.argv[2]
download_job_files(job_url, download_dir)
print('Files for job downloaded to "{}"'.format(download_dir))
