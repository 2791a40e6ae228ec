"""Packaging for celery-django-fixup (Python 2.7 and 3.6+)."""
import io
import os
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*parts):
    with io.open(os.path.join(HERE, *parts), encoding='utf-8') as fh:
        return fh.read()


def version():
    return re.search(r"^__version__ = '([^']+)'", read('celery_django_fixup', '__init__.py'),
                     re.M).group(1)


class BuildWithPatches(build_py):
    """Ship the top-level patches/upstream-backports/ inside the package (the record of
    Celery 4.4.4's own fix-up that ``celery_django_fixup.upstream_patches`` reads)."""

    def run(self):
        build_py.run(self)
        source = os.path.join(HERE, 'patches', 'upstream-backports')
        if not os.path.isdir(source):
            return
        target = os.path.join(self.build_lib, 'celery_django_fixup', 'patches',
                              'upstream-backports')
        self.mkpath(target)
        for name in sorted(os.listdir(source)):
            if name.endswith('.diff'):
                self.copy_file(os.path.join(source, name), os.path.join(target, name))


setup(
    name='celery-django-fixup',
    version=version(),
    description='Celery workers that reuse Django database connections safely (Celery 4.0-4.4)',
    long_description=read('README.rst'),
    long_description_content_type='text/x-rst',
    license='BSD-3-Clause',
    packages=find_packages(exclude=['tests', 'tests.*']),
    include_package_data=True,
    cmdclass={'build_py': BuildWithPatches},
    python_requires='>=2.7, !=3.0.*, !=3.1.*, !=3.2.*, !=3.3.*, !=3.4.*, !=3.5.*',
    # No upper bound on celery: pip would downgrade a user's Celery. The supported range is
    # checked at run time (celery_django_fixup.versions) and stated in the README.
    install_requires=['celery>=4.0', 'django>=1.11'],
    entry_points={
        'console_scripts': ['celery-django-fixup = celery_django_fixup.cli:main'],
    },
    classifiers=[
        'Development Status :: 5 - Production/Stable',
        'Framework :: Celery',
        'Framework :: Django',
        'Framework :: Django :: 1.11',
        'Framework :: Django :: 2.2',
        'Framework :: Django :: 3.0',
        'Framework :: Django :: 3.1',
        'Framework :: Django :: 3.2',
        'Intended Audience :: Developers',
        'License :: OSI Approved :: BSD License',
        'Operating System :: POSIX',
        'Programming Language :: Python :: 2',
        'Programming Language :: Python :: 2.7',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.6',
        'Programming Language :: Python :: 3.7',
        'Programming Language :: Python :: 3.8',
        'Topic :: Database',
        'Topic :: System :: Distributed Computing',
    ],
)
