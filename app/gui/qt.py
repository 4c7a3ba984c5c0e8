"""The one module that imports Qt. Everything else in ``app.gui`` takes Qt names from here,
so a move to another binding (or version) touches one file."""
from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import (QByteArray, QEvent, QMimeData, QObject, QPoint, QPointF, QRectF, QSettings, QSize, Qt,
                            QThreadPool, QTimer, QUrl, Signal, Slot, qVersion)
from PySide6.QtGui import (QAction, QColor, QDesktopServices, QDragEnterEvent, QDropEvent, QFont, QGuiApplication, QImage, QKeySequence,
                           QPainter, QPalette, QPen, QPixmap, QShortcut, QTextCursor)
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QDialog, QDialogButtonBox,
                               QFileDialog, QFormLayout, QFrame, QGroupBox, QHBoxLayout, QHeaderView, QInputDialog,
                               QLabel, QLineEdit, QMainWindow, QMenu, QMessageBox, QPlainTextEdit, QProgressBar,
                               QPushButton, QScrollArea, QSizePolicy, QSpinBox, QSplitter, QStackedWidget,
                               QTableWidget, QTableWidgetItem, QTabWidget, QTextBrowser, QToolButton, QVBoxLayout,
                               QWidget)
import PySide6

PYSIDE_VERSION = PySide6.__version__

__all__ = [n for n in dir() if not n.startswith("_")]
