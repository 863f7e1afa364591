"""Print the -D flags that build the SQL guard against pip's pyspark (its jars folder and their versions)."""
import glob
import os

import pyspark

jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")


def version(pattern: str) -> str:
    return os.path.basename(glob.glob(os.path.join(jars, pattern))[0]).rsplit("-", 1)[1][:-len(".jar")]


print(f"-Dpyspark.jars={jars} -Dspark.version={pyspark.__version__} -Dscala.version={version('scala-library-*.jar')} "
      f"-Dhadoop.version={version('hadoop-client-api-*.jar')}")
