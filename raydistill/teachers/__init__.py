"""Group teachers: training, checkpoints, and serving logits (in-process or as Ray actors)."""
from raydistill.teachers.frozen import (FrozenTeacher, LocalTeachers, TeacherError, load_teacher, save_teacher,
                                        teacher_checkpoint)
from raydistill.teachers.training import train_teacher

__all__ = ["FrozenTeacher", "LocalTeachers", "load_teacher", "save_teacher", "teacher_checkpoint", "TeacherError",
           "train_teacher"]
